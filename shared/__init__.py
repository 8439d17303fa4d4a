"""What the server and its clients share: the wire codec and document schemas."""
