"""What a run produced and how it reads: per-request records and the summary
(`records`), statistics (`stats`), who is compared with whom (`roles`), summary.md
(`summary_md`), and the report of a run or sweep folder (`report`, which reads the folder
with `load`, compares with `compare`, writes text with `markdown` and `formatting`, and
draws `figures` and the `timeline`)."""
