"""One module per page (or pair of pages): each adds its routes with `add_routes(router)`."""
