"""The synthetic seizure consortium: realistic keypoint recordings without patient data.

Entry points: :func:`generate_consortium` (``semiofed synth``) writes sites → patients →
recordings with events.tsv and ground truth; :func:`simulate_event_clip` makes one short
recording with a single event of a model class, for tests and analyses. Parameter values and
their clinical sources: ``shared/synth/PARAMETERS.md``.

Lateralization convention: an event's ``lateralization`` is the hemisphere of onset (SzCORE/EEG
convention); its motor signs follow clinical lateralizing rules (e.g. clonic jerks and head
version contralateral), and ``body_side`` in the ground truth names the side they appear on.
"""

from __future__ import annotations

from .clip import simulate_event_clip
from .consortium import ConsortiumSummary, generate_consortium

__all__ = ["ConsortiumSummary", "generate_consortium", "simulate_event_clip"]
