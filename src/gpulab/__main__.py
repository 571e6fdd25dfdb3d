from gpulab.cli import main

main()
