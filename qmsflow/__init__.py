"""qmsflow: quality events between a QMS and the plant's ERP, MES, LIMS and maintenance systems."""

__version__ = "0.1.0"
