"""A hook plugin whose import fails."""
raise ImportError("hidra_fake.hooks_importerror: fake missing dependency 'acme_sdk'")
