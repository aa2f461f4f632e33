"""Models composed from encoders, fusion blocks and heads: classifier, contrastive dual encoder, captioner."""
