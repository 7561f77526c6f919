"""Audio plane helpers: RTP/RFC 4733 parsing, G.711, pcap read/write for tests and benchmarks."""
