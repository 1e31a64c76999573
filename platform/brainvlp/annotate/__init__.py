"""Report annotation on the user's own cluster (brat section 8): a manifest's reports rewritten and read
into structured findings by a local annotator, before ingest.

brat sent 80,000 reports to GPT-4 twice: once to rewrite each report without references to prior scans,
other modalities and PHI (its Fig. 13), once to answer the finding questions of its Fig. 14 as JSON.
Hospitals cannot send reports to an external API, so ``kind: annotate`` does the same with an annotator
chosen by name (``config.ANNOTATORS``): a local causal LM (``lm``), the phantom's exact reader
(``phantom``) or the rule reader (``rules``). ``job.run_annotate`` runs it with Ray Data, resumable part by
part, and writes a new manifest that ingest reads.
"""
