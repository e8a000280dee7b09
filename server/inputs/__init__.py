"""Images in and out: SSRF-safe URL fetching, decoding, encoding, resolving a request into a job."""
