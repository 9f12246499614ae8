"""Seizure label vocabulary and its mapping to model classes — the one place they live.

Event types follow the SzCORE / ILAE-2017 vocabulary (the ``Levels`` of
``bids/events.json`` in the ``epilepsy2bids`` package) where it has a term. SzCORE has no
term for psychogenic non-epileptic events; SemioFed uses ``pnes`` for them.

Model classes (seizure-type head):

====  ================  ===============================================================
idx   class             event types mapped to it
====  ================  ===============================================================
0     ``bckg``          ``bckg`` (background, including confounders such as eating)
1     ``automatisms``   ``sz_foc_a_m_automatisms``, ``sz_foc_ia_m_automatisms``, ...
2     ``clonic``        ``sz_foc_a_m_clonic``, ``sz_foc_ia_m_clonic``, ...
3     ``f2b``           ``sz_foc_f2b``, ``sz_gen_m_tonicClonic`` (bilateral tonic-clonic)
4     ``hyperkinetic``  ``sz_foc_a_m_hyperkinetic``, ``sz_foc_ia_m_hyperkinetic``, ...
5     ``pnes``          ``pnes``
====  ================  ===============================================================

The generic ``sz`` (and any other SzCORE seizure term without a class here) is an
*unlabelled seizure*: it counts as seizure for the seizure-vs-background head and is
ignored (``IGNORE_INDEX``) by the type head.
"""

from __future__ import annotations

BACKGROUND = "bckg"
PNES = "pnes"
UNLABELLED_SEIZURE = "sz"

#: SzCORE / ILAE-2017 event types accepted in events.tsv (plus ``pnes``).
SZCORE_TYPES: tuple[str, ...] = (
    "bckg",
    "sz",
    "sz_foc",
    "sz_foc_a",
    "sz_foc_a_m",
    "sz_foc_a_m_automatisms",
    "sz_foc_a_m_atonic",
    "sz_foc_a_m_clonic",
    "sz_foc_a_m_spasms",
    "sz_foc_a_m_hyperkinetic",
    "sz_foc_a_m_myoclonic",
    "sz_foc_a_m_tonic",
    "sz_foc_a_nm",
    "sz_foc_a_um",
    "sz_foc_ia",
    "sz_foc_ia_m",
    "sz_foc_ia_m_automatisms",
    "sz_foc_ia_m_atonic",
    "sz_foc_ia_m_clonic",
    "sz_foc_ia_m_spasms",
    "sz_foc_ia_m_hyperkinetic",
    "sz_foc_ia_m_myoclonic",
    "sz_foc_ia_m_tonic",
    "sz_foc_ia_nm",
    "sz_foc_ia_um",
    "sz_foc_ua",
    "sz_foc_ua_m",
    "sz_foc_ua_m_automatisms",
    "sz_foc_ua_m_clonic",
    "sz_foc_ua_m_hyperkinetic",
    "sz_foc_ua_m_tonic",
    "sz_foc_ua_nm",
    "sz_foc_ua_um",
    "sz_foc_f2b",
    "sz_gen",
    "sz_gen_m",
    "sz_gen_m_tonicClonic",
    "sz_gen_m_clonic",
    "sz_gen_m_tonic",
    "sz_gen_m_myoclonic",
    "sz_gen_nm",
    "sz_uo",
    "sz_uo_m",
    "sz_uo_nm",
)

EVENT_TYPES: frozenset[str] = frozenset((*SZCORE_TYPES, PNES))

#: Model classes of the seizure-type head, in index order.
CLASSES: tuple[str, ...] = ("bckg", "automatisms", "clonic", "f2b", "hyperkinetic", "pnes")
CLASS_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}
NUM_CLASSES = len(CLASSES)
IGNORE_INDEX = -100

#: Event type the synthetic consortium writes for each model class.
CANONICAL_EVENT_TYPE: dict[str, str] = {
    "bckg": "bckg",
    "automatisms": "sz_foc_ia_m_automatisms",
    "clonic": "sz_foc_a_m_clonic",
    "f2b": "sz_foc_f2b",
    "hyperkinetic": "sz_foc_ia_m_hyperkinetic",
    "pnes": "pnes",
}

LATERALIZATIONS: frozenset[str] = frozenset({"left", "right", "bilateral", "unknown"})


def is_known_event_type(event_type: str) -> bool:
    return event_type in EVENT_TYPES


def is_event_of_interest(event_type: str) -> bool:
    """Anything a detector should flag: epileptic seizures and PNES (not background)."""
    return event_type != BACKGROUND


def class_of(event_type: str) -> int:
    """Model class index for an event type; ``IGNORE_INDEX`` for unlabelled seizures."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown eventType {event_type!r}")
    if event_type == BACKGROUND:
        return CLASS_INDEX["bckg"]
    if event_type == PNES:
        return CLASS_INDEX["pnes"]
    if event_type.endswith("_automatisms"):
        return CLASS_INDEX["automatisms"]
    if event_type.endswith("_clonic") and "tonicClonic" not in event_type:
        return CLASS_INDEX["clonic"]
    if event_type in ("sz_foc_f2b", "sz_gen_m_tonicClonic"):
        return CLASS_INDEX["f2b"]
    if event_type.endswith("_hyperkinetic"):
        return CLASS_INDEX["hyperkinetic"]
    return IGNORE_INDEX


def mirror_lateralization(lat: str) -> str:
    return {"left": "right", "right": "left"}.get(lat, lat)
