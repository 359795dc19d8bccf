"""Time the synthetic world generator at the default size and at 10x users, songs and artists.

Run with ``.venv/bin/python benchmarks/bench_generator.py``; prints size, plays and the best of
three wall-clock timings of :func:`generate_world` per size.
"""

from __future__ import annotations

import time

from spotify_engine_assets.datasets.listening.generator import GeneratorSettings, generate_world

SIZES = {
    "default": GeneratorSettings(),
    "10x users": GeneratorSettings(users=10_000, songs=50_000, artists=5_000),
}
REPEATS = 3


def best_of(settings: GeneratorSettings, repeats: int) -> tuple[int, float]:
    """Plays generated and the fastest of ``repeats`` timings, in seconds."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        world = generate_world(settings)
        timings.append(time.perf_counter() - started)
    return world.plays.height, min(timings)


def main() -> None:
    print(f"{'size':<10} {'users':>7} {'songs':>7} {'plays':>10} {'seconds':>8}")
    for label, settings in SIZES.items():
        plays, seconds = best_of(settings, REPEATS)
        print(f"{label:<10} {settings.users:>7} {settings.songs:>7} {plays:>10} {seconds:>8.3f}")


if __name__ == "__main__":
    main()
