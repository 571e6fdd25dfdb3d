"""`gpulab cost`: what a unit of real work costs on each option — CPU-only and GPU instances rented
on demand or as spot, or an owned server — from the throughput and energy a bench measured."""
