"""Curator review: a web app over a published version or a build folder, and its decisions fed back into the
next version.

Run as: grok review SOURCE [--db URL] [--host 127.0.0.1 --port 8080]

* :mod:`grok.review.decisions` - the decision vocabulary, row content hashes, which rows are reviewed twice,
  the per-row outcome of an event log and the summary (coverage, acceptance by family, Cohen's kappa);
  plain Python, no web or database dependency (publication reads it).
* :mod:`grok.review.store` - the append-only event log and the curators in any SQLAlchemy database (SQLite
  file beside the dataset by default, WAL, one transaction per decision; PostgreSQL for a team).
* :mod:`grok.review.source` - the rows of a published version (``NAME@VERSION`` or its folder) or of a build
  folder (verified, quarantined and skipped rows) with their study records, images and overlays.
* :mod:`grok.review.highlight` - the text of a row as escaped HTML with every number and claim marked and
  linked to what it is about, flagged where the verifier did not accept it.
* :mod:`grok.review.app` - the FastAPI app (server-rendered Jinja pages, plain JavaScript, nothing from a CDN).
"""
