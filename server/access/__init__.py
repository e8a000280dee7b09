"""Who may call: API keys, endpoint permissions, rate limits, credits."""
