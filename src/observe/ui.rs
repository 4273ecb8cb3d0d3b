//! The live view's web page, served on `/` (a placeholder until the page lands).

/// The page: one self-contained HTML document (nothing fetched from elsewhere) that reads
/// `/api/graph` and `/api/metrics`.
pub const PAGE: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>iotstream</title></head><body><h1>iotstream</h1>\
<p>The live view is served at <a href=\"api/metrics\">api/metrics</a> (JSON), \
<a href=\"api/graph\">api/graph</a> and <a href=\"metrics\">metrics</a> (Prometheus).</p>\
</body></html>\n";
