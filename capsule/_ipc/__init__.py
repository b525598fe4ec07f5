"""The wire between the supervisor and its containers: typed messages and frames."""
