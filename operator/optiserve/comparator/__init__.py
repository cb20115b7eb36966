"""The online accuracy comparator (shadow probe).

Every interval it sends a few golden-set requests to the baseline and the candidate Triton at the
same time, compares the answers sample by sample, and exports the counts the canary judge reads
(`optiserve_comparator_agreeing_total` / `optiserve_comparator_compared_total`, by `model` and
`metric`). `compare` is pure; `probe` runs the rounds; `service` is the process (`optiserve
comparator`). Only numpy, tritonclient and prometheus-client: no torch, no onnxruntime.
"""
