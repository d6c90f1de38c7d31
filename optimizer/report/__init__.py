"""`optimize report`, the rendering half: the report document's schema, its Pareto front and
recommendation, and the JSON / Markdown / HTML / chart files written from it."""

from optimizer.report.pareto import annotate, pareto_front, recommend
from optimizer.report.render import write_report
from optimizer.report.schema import (REPORT_SCHEMA, REPORT_SCHEMA_VERSION, ReportError,
                                     validate_report, write_schema)

__all__ = ["REPORT_SCHEMA", "REPORT_SCHEMA_VERSION", "ReportError", "annotate", "pareto_front",
           "recommend", "validate_report", "write_report", "write_schema"]
