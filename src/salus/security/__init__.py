"""Identity, tenancy, roles and scopes, the policy engine, consent and
break-the-glass: the security service every interface calls."""
