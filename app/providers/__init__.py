"""Vendor token APIs, one module per vendor behind :class:`TokenProvider`."""
