"""Classic CNN training throughput (VGG16, AlexNet, ResNet) with MFU."""
