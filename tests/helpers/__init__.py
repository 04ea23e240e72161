"""Helpers shared by the tests: config composition, fake runs, RSNA layouts, fixtures, the headless browser."""
