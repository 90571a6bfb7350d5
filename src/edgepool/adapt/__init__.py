"""Cloud-edge model adaptation in the style of CEMA (Chen et al., ICLR 2024): a forward-only edge model that
uploads only informative, reliable samples; a cloud that adapts a stronger foundation model on them and distills
it into the edge model's normalization parameters, which travel back to the edge.

data (real digits, train/held-out) -> corruptions (MNIST-C-style shifts) -> stream (phases of shifted held-out
digits) -> models (edge and cloud CNNs trained on clean digits, cached) -> selection (which samples to upload)
-> messages (the bytes on the link) -> edge / cloud (the two sides' state) -> run (one method over a stream)
-> compare (every method on one stream, the figures and the plot).
"""
