"""Overhead of timm-lap against vanilla and a naive regulariser (same as `timm-lap bench`).

    python benchmarks/overhead.py                                  # CPU: 4 models, 64 px, batch 32
    python benchmarks/overhead.py --device cuda --models resnet50 --img-size 224 --batch-size 128 \
        --amp --channels-last [--compile]
"""
from timm_lap.bench import main

if __name__ == "__main__":
    main()
