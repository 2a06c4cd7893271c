"""The settings of the THINGS-MEG preparation (epochs, filters, resampling, clamping, image size, run- or
window-wise filtering, the trigger check, the broken sensors) and the trial types that carry an image."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mindvis.data.fmri import DataError

IMAGE_TRIALS = ("exp", "test")
FILTERING = ("run", "window")


@dataclass
class MEGSettings:
    tmin: float = -0.5
    tmax: float = 1.0
    l_freq: float = 0.1
    h_freq: float = 40.0
    sfreq: float = 120.0
    clamp: float = 20.0
    image_size: int = 256
    # run: band-pass each whole run, then epoch (Meta's offline pipeline); window: each epoch alone, as mindvis-stream
    # does live (baseline, low-pass, resample; see mindvis.data.meeg_signal.preprocess_window), so a decoder trained on
    # it sees what the stream gives it
    filtering: str = "run"
    trigger_channel: str = "UPPT001"  # the release's image trigger channel (Hebart's script, Meta's reader)
    image_trigger: int = 64  # its value at every trial onset; 0: no check of the triggers against events.tsv
    drop_channels: list = field(default_factory=lambda: ["MRO11-1609"])  # broken sensors (Hebart's script)

    def __post_init__(self):
        if self.filtering not in FILTERING:
            raise DataError(f"filtering must be one of {FILTERING}, got {self.filtering!r}")
        if not self.tmin < 0 < self.tmax:
            raise DataError(f"epochs need tmin < 0 < tmax (a baseline before the onset), got {self.tmin}, {self.tmax}")
        if not 0 <= self.l_freq < self.h_freq or self.sfreq <= 0 or self.clamp <= 0 or self.image_size < 1:
            raise DataError(f"need 0 <= l_freq < h_freq, sfreq > 0, clamp > 0, image_size >= 1; got l_freq "
                            f"{self.l_freq}, h_freq {self.h_freq}, sfreq {self.sfreq}, clamp {self.clamp}, "
                            f"image_size {self.image_size}")
        if self.image_trigger < 0:
            raise DataError(f"image_trigger must be >= 0 (0: no check), got {self.image_trigger}")
        self.drop_channels = [str(c) for c in self.drop_channels]

    def run_settings(self) -> dict:
        """What makes a prepared run (the image size only matters when the runs are assembled)."""
        return {k: v for k, v in asdict(self).items() if k != "image_size"}
