"""Training: the layout-exact collator, supervised fine-tuning (stage 1) and preference optimization (stage 2)."""
