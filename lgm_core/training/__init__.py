"""Training and fine-tuning LGM (docs/conventions.md#training): dataset layout and loader, augmentation, losses,
differentiable rendering, the accelerate-based trainer, checkpoints. See docs/training.md.

Modules: :mod:`.layout` (on-disk dataset contract), :mod:`.dataset` (samples, split, order),
:mod:`.augment`, :mod:`.losses` (MSE + LPIPS-VGG), :mod:`.metrics` (PSNR, SSIM),
:mod:`.rendering` (differentiable splat rendering), :mod:`.config` (presets, JSON configs),
:mod:`.checkpoint` (atomic training state), :mod:`.trainer`, :mod:`.synthetic` (test datasets).
Nothing here is imported by ``import lgm_core``.
"""
