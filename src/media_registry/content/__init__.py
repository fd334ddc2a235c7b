"""Content: media types (sniffing and WhatsApp's limits), sources (bytes, streams, URL keys), files
confined to allowed folders, and verified files."""
