"""Per-sample data: from a record (or crop, or clip) to the tensors a training step reads.

``dataset`` (records, the training dataset, the feeds), ``transforms`` (augmented views), ``letterbox``
(the student's canvas), ``targets`` (heatmaps, sizes, offsets, identity slots), ``reid_data`` (the
teacher's crops and P x K batches), ``video_pairs`` (IDF stage 2's frame pairs), ``teacher_store`` (KD's
offline teacher embeddings). Each module is imported by its own name; this package re-exports nothing.
"""
