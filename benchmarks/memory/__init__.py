"""Peak memory of each module's main path at 256³ and 512×512×400 (CT-sized)."""
