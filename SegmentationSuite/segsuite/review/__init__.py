"""The reviewer's QC report: per subject and engine, views to judge and ratings to give; the ratings
file the group step obeys.

    views.write_views(...)         one (subject, engine)'s view layers, radiological (segsuite.qcviews)
    page.write_review_report(...)  the HTML page (ratings kept in the browser, exported as TSV)
    ratings.read_ratings(...)      that TSV, applied to the group tables by ratings.apply_*
"""
