"""Reading data: images, labels and masks, transforms, the per-fold lists, class vectors; one home per benchmark."""
