"""The victim-services service: opens victim-assistance cases for HSI's Victim Assistance
Program, service referrals for regional NGOs and immigration-relief screenings for USCIS."""
