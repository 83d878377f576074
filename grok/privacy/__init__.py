"""Privacy checks over everything a build writes: hashed deny lists, the whole-build scan, burned-in text.

Run as: grok privacy-scan BUILD_DIR [--identifiers FILE] [--prefect-db PATH] [--json]

* :mod:`grok.privacy.denylist` -- known identifiers held as keyed hashes of normalised token n-grams,
  and the matcher that counts them in any text (data contracts use it too);
* :mod:`grok.privacy.scan` -- walks every file of a build folder or a published version (tables with
  nested cells, JSON, HTML, text, SQLite, image metadata, DICOM headers) and reports identifier hits
  by file, kind and count, never the identifier;
* :mod:`grok.privacy.burned_in` -- a classical detector of text burned into image pixels.
"""
