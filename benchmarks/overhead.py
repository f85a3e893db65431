"""Overhead of timm-lap against vanilla and a naive regulariser (same as `timm-lap bench`).

    python -m benchmarks.overhead        # CPU: per-block case, paper-shaped nets, 4 models at 64 px, batch 32
    python -m benchmarks.overhead --cases per-block paper --threads 1
    python -m benchmarks.overhead --device cuda --cases models --models resnet50 --img-size 224 --batch-size 128 \
        --amp --channels-last [--compile]
"""
from timm_lap.cli.bench import main

if __name__ == "__main__":
    main()
