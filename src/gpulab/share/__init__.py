"""gpulab share: what happens to each training job when several jobs share one device."""
