"""The Graph API over HTTP: the client, its auth and pacing, URL rules, URL fetching and the SSRF guard."""
