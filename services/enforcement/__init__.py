"""The enforcement service: turns deliveries for HSI, CBP, the Coast Guard and the CCHT desk
into agency work items and reports their status back."""
