"""The resolver's answers in DNS wire form: pure functions of a query and what the records
found (records.Answer)."""

from __future__ import annotations

import socket
import struct
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from netdriver.node.records import Answer

UDP_LIMIT = 512  # without EDNS (RFC 1035)
EDNS_PAYLOAD = 1232  # what we tell EDNS clients we take (DNS flag day 2020)


def udp_limit(query: dns.message.Message) -> int:
    return max(query.payload, UDP_LIMIT) if query.edns >= 0 else UDP_LIMIT


def render(response: dns.message.Message, limit: int) -> bytes:
    """Wire form within `limit` bytes; when too big, TC set and as many records of a single
    answer set as fit (so a client that never retries over TCP still gets some), else none."""
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        pass
    response.flags |= dns.flags.TC
    response.authority, response.additional = [], []
    full = list(response.answer[0]) if len(response.answer) == 1 else []
    rrset = response.answer[0] if full else None
    response.answer = []
    best = response.to_wire(max_size=limit)
    low, high = 1, len(full)
    while rrset is not None and low <= high:  # the largest record count that still fits
        mid = (low + high) // 2
        part = dns.rrset.RRset(rrset.name, rrset.rdclass, rrset.rdtype)
        part.update_ttl(rrset.ttl)
        for rdata in full[:mid]:
            part.add(rdata)
        response.answer = [part]
        try:
            best = response.to_wire(max_size=limit)
            low = mid + 1
        except dns.exception.TooBig:
            high = mid - 1
    return best


def address_response(query: dns.message.Message, found: Answer, limit: int) -> bytes | None:
    """The wire form of an A/AAAA answer, written directly: building dnspython rdata
    objects costs ~20 µs a record, and this is what every lookup of a service takes.
    The same message as `render(local_response(...))` (a unit test compares them); None for
    anything else (PTR, EDNS versions above 0, classes other than IN, too big), which
    goes the dnspython way."""
    question = query.question[0]
    if (found.names or question.rdclass != dns.rdataclass.IN or query.edns > 0
            or question.rdtype not in (dns.rdatatype.A, dns.rdatatype.AAAA)):
        return None
    family, size = ((socket.AF_INET, 4) if question.rdtype == dns.rdatatype.A
                    else (socket.AF_INET6, 16))
    flags = dns.flags.QR | dns.flags.AA | dns.flags.RA | (query.flags & dns.flags.RD)
    opt = (b"\0" + struct.pack("!HHIH", dns.rdatatype.OPT, EDNS_PAYLOAD, 0, 0)
           if query.edns == 0 else b"")
    head = struct.pack("!6H", query.id, flags, 1, len(found.addresses), 0, 1 if opt else 0)
    # Each record's owner is a pointer to the question's name at offset 12.
    record = struct.pack("!HHHIH", 0xC00C, question.rdtype, dns.rdataclass.IN, found.ttl, size)
    wire = b"".join([head, cast(bytes, question.name.to_wire()),
                     struct.pack("!HH", question.rdtype, question.rdclass),
                     *(record + socket.inet_pton(family, a) for a in found.addresses), opt])
    return wire if len(wire) <= limit else None


def local_response(query: dns.message.Message, found: Answer) -> dns.message.Message:
    response = dns.message.make_response(query, our_payload=EDNS_PAYLOAD)
    response.flags |= dns.flags.RA | dns.flags.AA
    question = query.question[0]
    if found.addresses:
        response.answer.append(dns.rrset.from_text_list(
            question.name, found.ttl, dns.rdataclass.IN, question.rdtype,
            list(found.addresses)))
    elif found.names:
        response.answer.append(dns.rrset.from_text_list(
            question.name, found.ttl, dns.rdataclass.IN, dns.rdatatype.PTR, list(found.names)))
    return response


def error_response(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    response = dns.message.make_response(query, our_payload=EDNS_PAYLOAD)
    response.flags |= dns.flags.RA
    response.set_rcode(rcode)
    return response


def formerr(wire: bytes) -> bytes | None:
    """A FORMERR for a query dnspython cannot parse, when at least its id is readable."""
    if len(wire) < 2:
        return None
    (qid,) = struct.unpack("!H", wire[:2])
    flags = dns.flags.QR | dns.flags.RA
    return struct.pack("!HHHHHH", qid, flags | dns.rcode.FORMERR, 0, 0, 0, 0)
