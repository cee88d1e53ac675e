"""Vendor token APIs, one module per vendor behind :class:`~app.providers.base.BaseProvider`."""
