"""Test and benchmark tooling, not part of the appliance's runtime package.

* :mod:`tests.kit.rtp`: RTP fixed header (RFC 3550) and RFC 4733 telephone-event codecs, G.711.
* :mod:`tests.kit.pcap` (with its private :mod:`tests.kit._pcap_io`): speech and DTMF as RTP
  pcap files for sipp, RTP streams read back out of packet captures (``dpkt``).
* :mod:`tests.kit.wer`: word error rate after text normalisation (``jiwer``, ``num2words``).

These need the ``test`` extra of pyproject.toml, which the production image does not install.
Tests import them as ``tests.kit.*``; benchmarks, run from the repository root as
``python -m benchmarks.run``, import them the same way.
"""
