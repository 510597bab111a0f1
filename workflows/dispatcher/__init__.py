"""The dispatcher: follows tagging's and audience's feeds per tenant, enrols members into journeys
and signals their running journeys with the events those wait for."""
