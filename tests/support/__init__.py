"""Helpers the tests share: the endpoint launcher, the Azure stand-in and environment builder, the browser driver."""
