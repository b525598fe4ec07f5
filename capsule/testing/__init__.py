"""capsule.testing: start supervisors on temporary apps, inline features, fault injection."""
