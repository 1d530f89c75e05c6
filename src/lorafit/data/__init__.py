"""From a file to batches, in the order the data flows:

- tables: read a local file or a hub dataset into a frame (one error line per bad record)
- examples: texts and labels from a frame, the length filter, the seeded stratified split
- tokens: tokenise once, cached on disk by tokenizer, max_length and texts
- batches: datasets, length-grouped batches, dynamic padding, the loader
"""
