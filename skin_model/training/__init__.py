"""Training on HAM10000 (the CPU recipe, resume, warm start, distillation), ablation and the trust fit."""
