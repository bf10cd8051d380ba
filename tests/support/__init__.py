"""What the tests share: the platform launcher, data helpers, fault kit, chart rendering."""
