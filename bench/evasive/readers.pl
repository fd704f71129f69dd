#!/usr/bin/perl
# The evasive benchmark's independent reader: Perl's MIME::Tools (Debian's libmime-tools-perl).
#
#   perl bench/evasive/readers.pl MESSAGE.eml ...
#
# prints one JSON object per message: {"file": ..., "parts": [{"names": [...],
# "data": <base64 of the decoded body>}, ...], "error": ...}, each part as
# MIME::Parser decodes it (its own decoders: base64, quoted-printable, x-uu(encode),
# binhex; nested messages parsed).  The caller decides what counts as the payload.
use strict;
use warnings;
use MIME::Parser;
use MIME::Words qw(decode_mimewords);
use MIME::Base64 qw(encode_base64);
use Encode qw(decode encode);
use JSON::PP;

my $json = JSON::PP->new->canonical(1);

sub words {
    my ($value) = @_;
    return undef unless defined $value && length $value;
    my $out = '';
    for my $piece (decode_mimewords($value)) {
        my ($text, $charset) = @$piece;
        if ($charset) {
            my $decoded = eval { decode($charset, $text) };
            $text = encode('UTF-8', defined $decoded ? $decoded : $text);
        }
        $out .= $text;
    }
    return $out;
}

for my $file (@ARGV) {
    my $parser = MIME::Parser->new;
    $parser->output_to_core(1);
    $parser->tmp_to_core(1);
    $parser->extract_uuencode(1);    # uuencoded blocks inside text bodies, as MIME::Tools offers
    $parser->extract_nested_messages(1);
    my @parts;
    my $entity = eval { $parser->parse_open($file) };
    my $error = $@ ? "$@" : undef;
    if ($entity) {
        for my $part ($entity->parts_DFS) {
            my $body = $part->bodyhandle or next;
            my $head = $part->head;
            my %seen;
            my @names = grep { defined && length && !$seen{$_}++ } map { words($_) } (
                $head->recommended_filename,
                $head->mime_attr('content-disposition.filename'),
                $head->mime_attr('content-type.name'),
            );
            push @parts, {names => \@names, data => encode_base64($body->as_string // '', '')};
        }
    }
    print $json->encode({file => $file, parts => \@parts, error => $error}), "\n";
}
