"""Train the example scikit-learn model on the shipped 1 m bars, write it, print its SHA-256.

The model predicts whether the next bar closes higher, from scale-free features that the
shipped config (market_data_pipeline/defaults/configs/streaming.yaml) computes: a standardised
logistic regression, fitted on a pandas DataFrame so that ``feature_names_in_`` fixes the
feature order the adapter uses.
Put the printed hash in ``inference.adapters.sklearn.sha256`` of that config.

Example:  .venv/bin/python scripts/train_example_model.py --out /tmp/example_model.joblib
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from datetime import UTC, datetime
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from market_data_core.config import load_config  # noqa: E402
from market_data_core.contracts import Bar  # noqa: E402
from market_data_pipeline.features import FeatureEngine  # noqa: E402
from market_data_pipeline.project import (  # noqa: E402
    DEFAULT_CONFIG_FILE,
    DEFAULTS_DIR,
    EXAMPLE_MODEL_FILE,
)

FEATURES = ["momentum", "volatility", "rsi", "ret_30s", "vol_5m"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bars", type=Path, default=DEFAULTS_DIR / "datasets" / "ftx-btc-perp-1m-2022-01.csv"
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_FILE)
    parser.add_argument("--out", type=Path, default=EXAMPLE_MODEL_FILE)
    args = parser.parse_args()

    config = load_config(args.config, env={})
    engine = FeatureEngine(config.features.windows, timed=False)
    df = pd.read_csv(args.bars)
    rows = []
    for r in df.itertuples():
        ts = datetime.fromisoformat(r.timestamp).replace(tzinfo=UTC)
        snap = engine.update_bar(
            Bar("ftx", "BTC-PERP", "1m", ts, r.open, r.high, r.low, r.close, r.volume)
        )
        assert snap is not None
        rows.append([snap.values[n] for n in FEATURES])
    x = pd.DataFrame(rows, columns=FEATURES)
    y = (df["close"].shift(-1) > df["close"]).astype(int)
    ok = x.notna().all(axis=1).to_numpy() & (np.arange(len(df)) < len(df) - 1)
    x, y = x[ok], y[ok]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=200))
    model.fit(x, y)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, args.out)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(
        f"trained on {len(x)} bars, features {', '.join(FEATURES)}; in-sample accuracy "
        f"{model.score(x, y):.3f}",
        file=sys.stderr,
    )
    print(f"{digest}  {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
