"""For trying and testing walbackup: the WAL simulator, embedded servers, the demo."""
