"""Starting containers: the zygote fork server, its protocol, and the child's bootstrap."""
