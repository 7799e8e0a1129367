"""Read PyTorch's TF32 switches the same way on torch versions with and without the precision API."""

from __future__ import annotations

from segsuite.engine import tf32_switches


def uses_precision_api() -> bool:
    return isinstance(ieee_state()[0], str)


def tf32_state() -> tuple:
    """(convolutions, matrix products): 'ieee'/'tf32'/'none' strings, or the legacy allow_tf32 flags."""
    return tuple(getattr(owner, name) for owner, name, _ in tf32_switches())


def ieee_state() -> tuple:
    return tuple(value for _, _, value in tf32_switches())


def set_tf32_state(state: tuple) -> None:
    for (owner, name, _), value in zip(tf32_switches(), state):
        setattr(owner, name, value)


def record_tf32_state_in_networks(monkeypatch) -> list:
    """Make every KerasUNet pass append the TF32 switches it ran under to the returned list."""
    from segsuite.nets.unet import KerasUNet

    seen = []
    features, feature_slabs = KerasUNet.features, KerasUNet.feature_slabs

    def recording_features(self, x):
        seen.append(tf32_state())
        return features(self, x)

    def recording_feature_slabs(self, x, *args, **kwargs):  # recorded when the first slab is asked for
        seen.append(tf32_state())
        yield from feature_slabs(self, x, *args, **kwargs)

    monkeypatch.setattr(KerasUNet, "features", recording_features)
    monkeypatch.setattr(KerasUNet, "feature_slabs", recording_feature_slabs)
    return seen
