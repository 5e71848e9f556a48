"""Interface documents generated from the code's declarations: AsyncAPI 3.0 and one ICD per system.

`channels` describes every declared topic from the topic catalog, the schema lock, the ACL plan
and the key file; `systems` reads the per-system data files; `asyncapi` and `icd` render them;
`documents` writes and checks the files under docs/ (`qmsflow icd generate`, `qmsflow icd check`);
`parser` validates the AsyncAPI document with the official JavaScript parser.
"""
