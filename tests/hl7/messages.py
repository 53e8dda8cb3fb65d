"""ORU^R01 messages for the tests: built from a few arguments, as a lab's interface engine would send them."""

from collections.abc import Sequence

LAB = "SNUH-LAB"
AUTHORITY = "SNUH"


def obx(n: int, code: str = "19113-0^IgE^LN", value: str = "1520", unit: str = "k[IU]/L^kIU/L^UCUM",
        status: str = "F", kind: str = "NM", sub_id: str = "", when: str = "20240201083000+0900",
        ref_range: str = "0-100", flags: str = "H") -> str:
    return f"OBX|{n}|{kind}|{code}|{sub_id}|{value}|{unit}|{ref_range}|{flags}|||{status}|||{when}"


def oru(mrn: str, results: Sequence[str] | None = None, *, control_id: str = "MSG00001", facility: str = LAB,
        charset: str = "UNICODE UTF-8", filler: str = "F-7781", authority: str = AUTHORITY,
        message_type: str = "ORU^R01^ORU_R01", sent: str = "20240201093000+0900", extra: Sequence[str] = ()) -> str:
    """One ORU^R01 (segments ended by CR) of one patient's results (default: one IgE)."""
    results = list(results) if results is not None else [obx(1)]
    return "\r".join([
        f"MSH|^~\\&|LIS|{facility}|TRIAL-FHIR|SITE|{sent}||{message_type}|{control_id}|P|2.5.1|||||KOR|{charset}",
        f"PID|1||{mrn}^^^{authority}^MR||Kim^Ji-woo",
        f"OBR|1|PL-1|{filler}^LIS|LAB^Lab panel^L|||20240201080000+0900",
        *results, *extra]) + "\r"


def msa(ack: str) -> list[str]:
    """MSA-1 and MSA-2 of an ACK."""
    segment = next(s for s in ack.split("\r") if s.startswith("MSA"))
    return segment.split("|")[1:3]


def errs(ack: str) -> list[list[str]]:
    """The fields of each ERR segment of an ACK (index 0 = ERR)."""
    return [s.split("|") for s in ack.split("\r") if s.startswith("ERR")]
